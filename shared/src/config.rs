//! Settings read once from the environment at start-up and validated, so a bad value stops the
//! process with the setting's name instead of failing later on a request.

use std::{collections::HashMap, net::SocketAddr, str::FromStr, time::Duration};

use phonenumber::country::Id;

use crate::{jobs, outbound::Sender, phone, retry::RetryPolicy, secret::Secret};

/// A setting that is present but unusable, or missing where required.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

/// Where settings come from: the process environment, or a map in tests.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;
}

pub struct Env;

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

pub(crate) fn parsed<T: FromStr>(
    src: &dyn Source,
    key: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match src.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(key, format!("cannot parse {v:?}: {e}"))),
    }
}

fn required(src: &dyn Source, key: &'static str) -> Result<String, ConfigError> {
    src.get(key)
        .ok_or_else(|| ConfigError::new(key, "is required but not set"))
}

fn bool_setting(src: &dyn Source, key: &'static str, default: bool) -> Result<bool, ConfigError> {
    match src.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => Err(ConfigError::new(
            key,
            format!("expected true or false, got {v:?}"),
        )),
    }
}

fn millis(src: &dyn Source, key: &'static str, default: u64) -> Result<Duration, ConfigError> {
    parsed(src, key, default).map(Duration::from_millis)
}

fn optional_millis(src: &dyn Source, key: &'static str) -> Result<Option<Duration>, ConfigError> {
    match src.get(key) {
        None => Ok(None),
        Some(_) => millis(src, key, 0).map(Some),
    }
}

fn secs(src: &dyn Source, key: &'static str, default: u64) -> Result<Duration, ConfigError> {
    parsed(src, key, default).map(Duration::from_secs)
}

fn url_setting(src: &dyn Source, key: &'static str) -> Result<Option<String>, ConfigError> {
    let Some(v) = src.get(key) else {
        return Ok(None);
    };
    let parsed = url::Url::parse(v.trim())
        .map_err(|e| ConfigError::new(key, format!("not a URL ({e}): {v:?}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(key, "must be an http:// or https:// URL"));
    }
    Ok(Some(v.trim().trim_end_matches('/').to_owned()))
}

/// Settings every binary shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// May hold a password: never printed.
    pub database_url: Secret,
    /// What is at `database_url`: Postgres itself or a session pooler, or a transaction pooler.
    pub database_pool_mode: PoolMode,
    /// Whether `database_pool_mode` is known (`DATABASE_POOL_MODE` set, or Supabase's pooler URL)
    /// rather than assumed: when not, the binaries probe at start-up (`db::settle_pool_mode`).
    pub database_pool_mode_known: bool,
    /// A connection that keeps its session (Supabase's direct or session-pooler string), for
    /// LISTEN; without one behind a transaction pooler, workers poll.
    pub database_session_url: Option<Secret>,
    pub database_max_connections: u32,
    pub database_acquire_timeout: Duration,
    pub default_region: Id,
    pub log_format: LogFormat,
    /// Internal networks tenants' URLs may still reach (`AGENT_ALLOWED_NETWORKS`); none by
    /// default.
    pub agent_fence: std::sync::Arc<crate::fence::Fence>,
}

/// Whether each client connection keeps one server session (`Session`: Postgres itself, PgBouncer
/// in session mode, Supabase's session pooler on 5432) or shares server connections between
/// transactions (`Transaction`: PgBouncer in transaction mode, Supabase's pooler on 6543), which
/// allows no prepared statement, LISTEN or session lock to outlive a transaction.
///
/// `TransactionNamed`: a transaction pooler that tracks protocol-level prepared statements
/// (PgBouncer 1.21+ with `max_prepared_statements` > 0): sqlx's named, cached statements are kept,
/// and still nothing relies on a session (no LISTEN, no session lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
    TransactionNamed,
}

impl PoolMode {
    /// `DATABASE_POOL_MODE`, else what the URL says (Supabase's pooler on port 6543 is its
    /// transaction mode), else `Session` until a probe says otherwise; and whether it is known.
    fn load(src: &dyn Source, database_url: &str) -> Result<(Self, bool), ConfigError> {
        match src
            .get("DATABASE_POOL_MODE")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            Some(v) if v == "session" => Ok((Self::Session, true)),
            Some(v) if v == "transaction" => Ok((Self::Transaction, true)),
            Some(v) if v == "transaction-named" => Ok((Self::TransactionNamed, true)),
            Some(v) => Err(ConfigError::new(
                "DATABASE_POOL_MODE",
                format!("expected session, transaction or transaction-named, got {v:?}"),
            )),
            None => Ok(Self::from_url(database_url)),
        }
    }

    fn from_url(database_url: &str) -> (Self, bool) {
        let supabase_transaction_pooler = url::Url::parse(database_url).is_ok_and(|u| {
            u.port() == Some(6543)
                && u.host_str()
                    .is_some_and(|h| h.ends_with(".pooler.supabase.com"))
        });
        if supabase_transaction_pooler {
            (Self::Transaction, true)
        } else {
            (Self::Session, false)
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
            Self::TransactionNamed => "transaction-named",
        }
    }

    /// Whether client connections share server connections between transactions (so nothing may
    /// rely on a session: LISTEN, session locks).
    pub fn shares_server_connections(self) -> bool {
        !matches!(self, Self::Session)
    }
}

fn postgres_url(src: &dyn Source, key: &'static str) -> Result<Option<String>, ConfigError> {
    let Some(url) = src.get(key) else {
        return Ok(None);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            key,
            "must start with postgres:// or postgresql://",
        ));
    }
    sqlx::postgres::PgConnectOptions::from_str(&url)
        .map_err(|e| ConfigError::new(key, format!("not a usable connection string: {e}")))?;
    Ok(Some(url))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Common {
    /// `default_connections` and `default_acquire` are the process's own defaults: a worker,
    /// whose in-flight work is bounded by its budget, waits longer for a connection than an
    /// ingress, which answers 503 when none comes.
    pub fn load(
        src: &dyn Source,
        default_connections: u32,
        default_acquire: Duration,
    ) -> Result<Self, ConfigError> {
        let database_url = postgres_url(src, "DATABASE_URL")?
            .ok_or_else(|| ConfigError::new("DATABASE_URL", "is required but not set"))?;
        let (database_pool_mode, database_pool_mode_known) = PoolMode::load(src, &database_url)?;
        let database_session_url = postgres_url(src, "DATABASE_SESSION_URL")?.map(Secret::new);
        let region = src.get("DEFAULT_REGION").unwrap_or_else(|| "US".into());
        let default_region = phone::parse_region(&region).ok_or_else(|| {
            ConfigError::new(
                "DEFAULT_REGION",
                format!("unknown ISO country code {region:?}"),
            )
        })?;
        let log_format = match src.get("LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("json") => LogFormat::Json,
            Some("pretty") | Some("text") => LogFormat::Pretty,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {other:?}"),
                ));
            }
        };
        let database_max_connections =
            parsed(src, "DATABASE_MAX_CONNECTIONS", default_connections)?;
        if database_max_connections == 0 {
            return Err(ConfigError::new(
                "DATABASE_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            database_url: Secret::new(database_url),
            database_pool_mode,
            database_pool_mode_known,
            database_session_url,
            database_max_connections,
            database_acquire_timeout: millis(
                src,
                "DATABASE_ACQUIRE_TIMEOUT_MS",
                default_acquire.as_millis() as u64,
            )?,
            default_region,
            log_format,
            agent_fence: std::sync::Arc::new(
                crate::fence::Fence::parse(&src.get("AGENT_ALLOWED_NETWORKS").unwrap_or_default())
                    .map_err(|e| ConfigError::new("AGENT_ALLOWED_NETWORKS", e))?,
            ),
        })
    }
}

/// Twilio account settings.
#[derive(Debug, Clone)]
pub struct Twilio {
    pub account_sid: Option<String>,
    pub auth_token: Secret,
    pub auth_token_secondary: Option<Secret>,
    pub phone_number: Option<String>,
    pub messaging_service_sid: Option<String>,
}

impl Twilio {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let auth_token = required(src, "TWILIO_AUTH_TOKEN")?;
        let account_sid = src.get("TWILIO_ACCOUNT_SID");
        if let Some(sid) = &account_sid
            && !(sid.starts_with("AC") && sid.len() == 34)
        {
            return Err(ConfigError::new(
                "TWILIO_ACCOUNT_SID",
                "must be AC followed by 32 characters",
            ));
        }
        Ok(Self {
            account_sid,
            auth_token: Secret::new(auth_token),
            auth_token_secondary: src.get("TWILIO_AUTH_TOKEN_SECONDARY").map(Secret::new),
            phone_number: src.get("TWILIO_PHONE_NUMBER"),
            messaging_service_sid: src.get("TWILIO_MESSAGING_SERVICE_SID"),
        })
    }

    /// Tokens a webhook signature may be made with: the current one, then the one being rotated in.
    pub fn tokens(&self) -> Vec<&str> {
        let mut t = vec![self.auth_token.expose()];
        if let Some(s) = &self.auth_token_secondary {
            t.push(s.expose());
        }
        t
    }

    /// Who outbound messages are sent as.
    pub fn sender(&self) -> Sender {
        Sender {
            phone_number: self.phone_number.clone(),
            messaging_service_sid: self.messaging_service_sid.clone(),
        }
    }
}

/// The Collections Monitor, the directory of tenants by phone number.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub api_url: Option<String>,
    pub api_key: Option<Secret>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
}

impl Monitor {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let max_attempts = parsed(src, "MONITOR_MAX_ATTEMPTS", 3u32)?;
        if max_attempts == 0 {
            return Err(ConfigError::new(
                "MONITOR_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            api_url: url_setting(src, "MONITOR_API_URL")?,
            api_key: src.get("MONITOR_API_KEY").map(Secret::new),
            timeout: millis(src, "MONITOR_TIMEOUT_MS", 2000)?,
            max_attempts,
            backoff_base: millis(src, "MONITOR_BACKOFF_MS", 100)?,
        })
    }

    /// Retries of one lookup, inside the call: up to 2^10 x the base apart.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::new(
            self.backoff_base,
            self.backoff_base.saturating_mul(1024),
            self.max_attempts,
        )
    }
}

/// Sending through Twilio's REST API (the send worker and the reconciler).
#[derive(Debug, Clone)]
pub struct Outbound {
    pub api_base: String,
    pub account_sid: String,
    pub auth_token: Secret,
    pub sender: Sender,
    /// Where Twilio posts status callbacks: PUBLIC_URL + /webhook/twilio/status.
    pub public_url: String,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Messages per second per sender; 0 turns pacing off.
    pub rate_per_sender: f64,
    pub unknown_outcome_grace: Duration,
    pub reconcile_interval: Duration,
    pub reconcile_stuck_after: Duration,
    /// A message still not final this long after its creation stops being polled.
    pub reconcile_give_up_after: Duration,
    /// How often the reconciler lists what Twilio received; None = off.
    pub inbound_backfill_interval: Option<Duration>,
    /// How far back the first backfill looks.
    pub inbound_backfill_lookback: Duration,
}

impl Outbound {
    /// None when TWILIO_AUTH_TOKEN is not set (a worker that does not send).
    pub fn load(src: &dyn Source) -> Result<Option<Self>, ConfigError> {
        if src.get("TWILIO_AUTH_TOKEN").is_none() {
            return Ok(None);
        }
        let twilio = Twilio::load(src)?;
        let account_sid = twilio.account_sid.clone().ok_or_else(|| {
            ConfigError::new("TWILIO_ACCOUNT_SID", "is required to send messages")
        })?;
        let sender = twilio.sender();
        if sender.messaging_service_sid.is_none() && sender.phone_number.is_none() {
            return Err(ConfigError::new(
                "TWILIO_PHONE_NUMBER",
                "is required to send messages (or set TWILIO_MESSAGING_SERVICE_SID)",
            ));
        }
        let public_url = url_setting(src, "PUBLIC_URL")?.ok_or_else(|| {
            ConfigError::new("PUBLIC_URL", "is required to receive status callbacks")
        })?;
        let default_rate = if sender.messaging_service_sid.is_some() {
            10.0
        } else {
            1.0
        };
        let rate_per_sender: f64 = parsed(src, "SEND_RATE_PER_SENDER", default_rate)?;
        if !(rate_per_sender >= 0.0 && rate_per_sender.is_finite()) {
            return Err(ConfigError::new(
                "SEND_RATE_PER_SENDER",
                "must be 0 (off) or a positive number",
            ));
        }
        // 10: retries then span at least 4 minutes (0.5 s, 1 s, 2 s ... 128 s), so a Twilio outage of a
        // few minutes delays sends instead of failing them (6 gave up after 16 to 31 s).
        let max_attempts = parsed(src, "SEND_MAX_ATTEMPTS", 10u32)?;
        if max_attempts == 0 {
            return Err(ConfigError::new("SEND_MAX_ATTEMPTS", "must be at least 1"));
        }
        Ok(Some(Self {
            api_base: url_setting(src, "TWILIO_API_BASE")?
                .unwrap_or_else(|| "https://api.twilio.com".into()),
            account_sid,
            auth_token: twilio.auth_token,
            sender,
            public_url,
            timeout: millis(src, "TWILIO_TIMEOUT_MS", 15_000)?,
            max_attempts,
            backoff_base: millis(src, "SEND_BACKOFF_BASE_MS", 1_000)?,
            backoff_max: secs(src, "SEND_BACKOFF_MAX_SECS", 300)?,
            rate_per_sender,
            unknown_outcome_grace: secs(src, "UNKNOWN_OUTCOME_GRACE_SECS", 60)?,
            reconcile_interval: secs(src, "RECONCILE_INTERVAL_SECS", 60)?,
            reconcile_stuck_after: secs(src, "RECONCILE_STUCK_AFTER_SECS", 600)?,
            reconcile_give_up_after: secs(src, "RECONCILE_GIVE_UP_AFTER_SECS", 72 * 3600)?,
            inbound_backfill_interval: Some(secs(src, "INBOUND_BACKFILL_INTERVAL_SECS", 60)?)
                .filter(|d| !d.is_zero()),
            inbound_backfill_lookback: secs(src, "INBOUND_BACKFILL_LOOKBACK_SECS", 86_400)?,
        }))
    }

    /// The sender pacing applies to: the messaging service, else our number.
    pub fn pacing_key(&self) -> &str {
        self.sender
            .messaging_service_sid
            .as_deref()
            .or(self.sender.phone_number.as_deref())
            .unwrap_or_default()
    }

    /// Retries of a send Twilio refused for now (429, 5xx).
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::new(self.backoff_base, self.backoff_max, self.max_attempts)
    }
}

/// Quiet hours (`shared::quiet_hours`): which workflows, the allowed window, and whether replies
/// in a live conversation are held to it too.
#[derive(Debug, Clone, PartialEq)]
pub struct QuietHours {
    pub window: crate::quiet_hours::Window,
    pub workflows: Vec<String>,
    pub enforce_on_replies: bool,
}

impl QuietHours {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let window = src
            .get("QUIET_HOURS")
            .unwrap_or_else(|| "08:00-21:00".into())
            .parse()
            .map_err(|e: String| ConfigError::new("QUIET_HOURS", e))?;
        let workflows = src
            .get("QUIET_HOURS_WORKFLOWS")
            .unwrap_or_else(|| "collections".into())
            .split(',')
            .map(|w| w.trim().to_owned())
            .filter(|w| !w.is_empty() && w != "none")
            .collect();
        let enforce_on_replies = match src.get("QUIET_HOURS_REPLIES").as_deref().map(str::trim) {
            None | Some("exempt") => false,
            Some("enforce") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "QUIET_HOURS_REPLIES",
                    format!("expected exempt or enforce, got {other:?}"),
                ));
            }
        };
        Ok(Self {
            window,
            workflows,
            enforce_on_replies,
        })
    }

    /// Whether a send of this workflow is held to the window.
    pub fn applies(&self, workflow_type: Option<&str>, is_reply: bool) -> bool {
        workflow_type.is_some_and(|w| self.workflows.iter().any(|q| q == w))
            && (!is_reply || self.enforce_on_replies)
    }
}

/// Tenant cache sizing and lifetimes.
#[derive(Debug, Clone)]
pub struct TenantCache {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub capacity: u64,
}

impl TenantCache {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            ttl: secs(src, "TENANT_CACHE_TTL_SECS", 300)?,
            negative_ttl: secs(src, "TENANT_CACHE_NEGATIVE_TTL_SECS", 60)?,
            capacity: parsed(src, "TENANT_CACHE_CAPACITY", 100_000u64)?,
        })
    }
}

/// Ingress (HTTP) settings.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub common: Common,
    pub twilio: Twilio,
    pub quiet_hours: QuietHours,
    pub monitor: Monitor,
    pub bind_addr: SocketAddr,
    /// A second listener for operations (`/metrics` and detailed readiness without a key), kept
    /// off the address Twilio reaches; None: not opened.
    pub metrics_addr: Option<SocketAddr>,
    pub public_url: String,
    pub trust_forwarded_headers: bool,
    pub max_body_bytes: usize,
    pub group_commit_max_batch: usize,
    pub group_commit_writers: usize,
    pub worker_threads: usize,
    /// Missing or invalid webhook signatures one source may send per window before its webhook
    /// requests are refused with 429 until the window ends; 0 turns the limit off.
    pub invalid_signature_limit: u32,
    pub invalid_signature_window: Duration,
    /// Longest a client may take to send a request's headers (also how long an idle keep-alive
    /// connection stays open).
    pub request_header_timeout: Duration,
    /// Longest a request may take from its headers to its answer, body included.
    pub request_timeout: Duration,
    /// On SIGTERM: how long the ingress keeps serving while `/health/ready` says `draining`
    /// (so load balancers take it out of rotation first), answering `Connection: close`.
    pub shutdown_drain: Duration,
    /// Then: how long requests in flight may take to finish before the process exits anyway.
    pub shutdown_timeout: Duration,
}

impl Ingress {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let public_url = url_setting(src, "PUBLIC_URL")?.ok_or_else(|| {
            ConfigError::new(
                "PUBLIC_URL",
                "is required: the URL Twilio calls, e.g. https://sms.example.com",
            )
        })?;
        let group_commit_max_batch = parsed(src, "GROUP_COMMIT_MAX_BATCH", 512usize)?;
        let group_commit_writers = parsed(src, "GROUP_COMMIT_WRITERS", 1usize)?;
        if group_commit_max_batch == 0 {
            return Err(ConfigError::new(
                "GROUP_COMMIT_MAX_BATCH",
                "must be at least 1",
            ));
        }
        if group_commit_writers == 0 {
            return Err(ConfigError::new(
                "GROUP_COMMIT_WRITERS",
                "must be at least 1",
            ));
        }
        let worker_threads = parsed(src, "INGRESS_WORKER_THREADS", 1usize)?;
        if worker_threads == 0 {
            return Err(ConfigError::new(
                "INGRESS_WORKER_THREADS",
                "must be at least 1",
            ));
        }
        let invalid_signature_limit = parsed(src, "INVALID_SIGNATURE_LIMIT", 20u32)?;
        let invalid_signature_window = secs(src, "INVALID_SIGNATURE_WINDOW_SECS", 60)?;
        if invalid_signature_limit > 0 && invalid_signature_window.is_zero() {
            return Err(ConfigError::new(
                "INVALID_SIGNATURE_WINDOW_SECS",
                "must be at least 1 (set INVALID_SIGNATURE_LIMIT=0 to turn the limit off)",
            ));
        }
        let request_header_timeout = millis(src, "REQUEST_HEADER_TIMEOUT_MS", 5000)?;
        if request_header_timeout.is_zero() {
            return Err(ConfigError::new(
                "REQUEST_HEADER_TIMEOUT_MS",
                "must be at least 1",
            ));
        }
        let request_timeout = millis(src, "REQUEST_TIMEOUT_MS", 10_000)?;
        if request_timeout.is_zero() {
            return Err(ConfigError::new("REQUEST_TIMEOUT_MS", "must be at least 1"));
        }
        let shutdown_timeout = secs(src, "SHUTDOWN_TIMEOUT_SECS", 20)?;
        if shutdown_timeout.is_zero() {
            return Err(ConfigError::new(
                "SHUTDOWN_TIMEOUT_SECS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            shutdown_drain: secs(src, "SHUTDOWN_DRAIN_SECS", 5)?,
            shutdown_timeout,
            common: Common::load(src, 10, Duration::from_secs(5))?,
            twilio: Twilio::load(src)?,
            quiet_hours: QuietHours::load(src)?,
            monitor: Monitor::load(src)?,
            bind_addr: parsed(src, "BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            metrics_addr: match src.get("METRICS_ADDR") {
                Some(v) if !v.trim().is_empty() && v.trim() != "off" => {
                    Some(v.trim().parse().map_err(|e| {
                        ConfigError::new("METRICS_ADDR", format!("cannot parse {v:?}: {e}"))
                    })?)
                }
                _ => None,
            },
            public_url,
            trust_forwarded_headers: bool_setting(src, "TRUST_FORWARDED_HEADERS", false)?,
            max_body_bytes: parsed(src, "MAX_BODY_BYTES", 64 * 1024usize)?,
            group_commit_max_batch,
            group_commit_writers,
            worker_threads,
            invalid_signature_limit,
            invalid_signature_window,
            request_header_timeout,
            request_timeout,
        })
    }
}

/// Worker settings no longer read: jobs in flight, fetch size and the queue's pool are derived
/// from `DATABASE_MAX_CONNECTIONS` (the worker's connection budget).
pub const RETIRED_WORKER_SETTINGS: &[&str] = &[
    "WORKER_CONCURRENCY",
    "WORKER_BATCH_SIZE",
    "WORKER_QUEUE_CONNECTIONS",
];

/// Worker settings.
#[derive(Debug, Clone)]
pub struct Worker {
    pub common: Common,
    pub monitor: Monitor,
    pub tenant_cache: TenantCache,
    /// Settings of earlier versions found set; no longer read (the worker warns).
    pub retired: Vec<&'static str>,
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: usize,
    /// `WORKER_POLL_INTERVAL_MS`; None: the default for how the worker wakes (see
    /// `worker::wakeups::safety_interval`).
    pub poll_interval: Option<Duration>,
    /// Telling the Monitor of a language change: 2 s, 4 s, 8 s ... up to 10 minutes apart.
    pub language_notify_retry: RetryPolicy,
    /// Loaded only for a worker whose queues send (outbound-send, reconciler); None when
    /// TWILIO_AUTH_TOKEN is not set.
    pub outbound: Option<Outbound>,
    /// Who agents' replies are sent as (TWILIO_PHONE_NUMBER, TWILIO_MESSAGING_SERVICE_SID).
    pub sender: Sender,
    pub quiet_hours: QuietHours,
    /// Answer a new opt-out with a confirmation in the recipient's language (once per opt-out).
    pub opt_out_confirmation: bool,
    pub route_timeout: Duration,
    pub route_retry: RetryPolicy,
    pub job_retention: Duration,
    /// Where `GET /metrics` listens; None when WORKER_METRICS_ADDR is `off`.
    pub metrics_addr: Option<SocketAddr>,
}

impl Worker {
    /// Settings for a worker that runs every queue.
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        Self::load_for(src, jobs::ALL_QUEUES)
    }

    /// Settings for a worker that runs `queues`: Twilio's sending settings are read (and must be
    /// complete) only when one of them sends or polls Twilio.
    pub fn load_for(src: &dyn Source, queues: &[&str]) -> Result<Self, ConfigError> {
        let sends = queues
            .iter()
            .any(|q| [jobs::OUTBOUND_SEND, jobs::RECONCILER].contains(q));
        let missed_heartbeats = parsed(src, "WORKER_MISSED_HEARTBEATS", 3usize)?;
        if missed_heartbeats == 0 {
            return Err(ConfigError::new(
                "WORKER_MISSED_HEARTBEATS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            common: Common::load(src, 12, Duration::from_secs(30))?,
            monitor: Monitor::load(src)?,
            tenant_cache: TenantCache::load(src)?,
            retired: RETIRED_WORKER_SETTINGS
                .iter()
                .copied()
                .filter(|k| src.get(k).is_some())
                .collect(),
            // A killed worker's jobs are re-queued within 2 s x 3; the heartbeat runs on the
            // queue's own connections, so a busy worker is never taken for dead.
            heartbeat_interval: secs(src, "WORKER_HEARTBEAT_SECS", 2)?,
            missed_heartbeats,
            poll_interval: optional_millis(src, "WORKER_POLL_INTERVAL_MS")?,
            language_notify_retry: RetryPolicy::new(
                Duration::from_secs(2),
                Duration::from_secs(600),
                parsed(src, "LANGUAGE_NOTIFY_MAX_ATTEMPTS", 8u32)?,
            ),
            outbound: if sends { Outbound::load(src)? } else { None },
            sender: Sender {
                phone_number: src.get("TWILIO_PHONE_NUMBER"),
                messaging_service_sid: src.get("TWILIO_MESSAGING_SERVICE_SID"),
            },
            quiet_hours: QuietHours::load(src)?,
            opt_out_confirmation: bool_setting(src, "OPT_OUT_CONFIRMATION", false)?,
            route_timeout: millis(src, "ROUTE_TIMEOUT_MS", 10_000)?,
            route_retry: RetryPolicy::new(
                millis(src, "ROUTE_BACKOFF_BASE_MS", 2_000)?,
                secs(src, "ROUTE_BACKOFF_MAX_SECS", 600)?,
                parsed(src, "ROUTE_MAX_ATTEMPTS", 5u32)?,
            ),
            job_retention: secs(src, "JOB_RETENTION_HOURS", 24)?.saturating_mul(3600),
            metrics_addr: match src.get("WORKER_METRICS_ADDR").as_deref().map(str::trim) {
                Some("off") => None,
                _ => Some(parsed(
                    src,
                    "WORKER_METRICS_ADDR",
                    SocketAddr::from(([127, 0, 0, 1], 9091)),
                )?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BASE: &[(&str, &str)] = &[
        ("DATABASE_URL", "postgres://localhost/sms"),
        ("TWILIO_AUTH_TOKEN", "secret"),
        ("PUBLIC_URL", "https://sms.example.com/"),
    ];

    #[test]
    fn ingress_defaults() {
        let cfg = Ingress::load(&src(BASE)).unwrap();
        assert_eq!(cfg.public_url, "https://sms.example.com");
        assert_eq!(cfg.max_body_bytes, 65536);
        assert!(!cfg.trust_forwarded_headers);
        assert_eq!(cfg.bind_addr.to_string(), "127.0.0.1:8080");
        assert!(cfg.monitor.api_url.is_none());
        assert_eq!(cfg.invalid_signature_limit, 20);
        assert_eq!(cfg.invalid_signature_window, Duration::from_secs(60));
        assert_eq!(cfg.request_header_timeout, Duration::from_millis(5000));
        assert_eq!(cfg.request_timeout, Duration::from_millis(10_000));
    }

    #[test]
    fn abuse_settings_are_validated() {
        for (key, value) in [
            ("INVALID_SIGNATURE_LIMIT", "-1"),
            ("INVALID_SIGNATURE_WINDOW_SECS", "0"),
            ("INVALID_SIGNATURE_WINDOW_SECS", "soon"),
            ("REQUEST_HEADER_TIMEOUT_MS", "0"),
            ("REQUEST_TIMEOUT_MS", "0"),
        ] {
            let mut s = src(BASE);
            s.insert(key.into(), value.into());
            assert_eq!(Ingress::load(&s).unwrap_err().setting, key, "{key}={value}");
        }
        // A limit of 0 turns it off, and then the window does not matter.
        let mut s = src(BASE);
        s.insert("INVALID_SIGNATURE_LIMIT".into(), "0".into());
        s.insert("INVALID_SIGNATURE_WINDOW_SECS".into(), "0".into());
        assert_eq!(Ingress::load(&s).unwrap().invalid_signature_limit, 0);
    }

    #[test]
    fn errors_name_the_setting() {
        let mut s = src(BASE);
        s.remove("DATABASE_URL");
        assert_eq!(Ingress::load(&s).unwrap_err().setting, "DATABASE_URL");
        let mut s = src(BASE);
        s.insert("BIND_ADDR".into(), "nonsense".into());
        let err = Ingress::load(&s).unwrap_err();
        assert_eq!(err.setting, "BIND_ADDR");
        assert!(err.to_string().contains("nonsense"));
        let mut s = src(BASE);
        s.insert("MONITOR_API_URL".into(), "ftp://x".into());
        assert_eq!(Ingress::load(&s).unwrap_err().setting, "MONITOR_API_URL");
        let mut s = src(BASE);
        s.insert("TRUST_FORWARDED_HEADERS".into(), "maybe".into());
        assert_eq!(
            Ingress::load(&s).unwrap_err().setting,
            "TRUST_FORWARDED_HEADERS"
        );
        let mut s = src(BASE);
        s.insert("TWILIO_ACCOUNT_SID".into(), "XX1".into());
        assert_eq!(Ingress::load(&s).unwrap_err().setting, "TWILIO_ACCOUNT_SID");
    }

    #[test]
    fn secondary_token_is_offered() {
        let mut s = src(BASE);
        s.insert("TWILIO_AUTH_TOKEN_SECONDARY".into(), "next".into());
        let cfg = Ingress::load(&s).unwrap();
        assert_eq!(cfg.twilio.tokens(), vec!["secret", "next"]);
    }

    #[test]
    fn quiet_hours_settings() {
        let q = Ingress::load(&src(BASE)).unwrap().quiet_hours;
        assert_eq!(q.workflows, vec!["collections"]);
        assert!(q.applies(Some("collections"), false) && !q.applies(Some("collections"), true));
        assert!(!q.applies(Some("maintenance"), false) && !q.applies(None, false));
        for (key, value) in [("QUIET_HOURS", "9-5"), ("QUIET_HOURS_REPLIES", "sometimes")] {
            let mut s = src(BASE);
            s.insert(key.into(), value.into());
            assert_eq!(Ingress::load(&s).unwrap_err().setting, key);
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut s = src(BASE);
        s.insert(
            "DATABASE_URL".into(),
            "postgres://app:pa55word@db.example/sms".into(),
        );
        s.insert("TWILIO_AUTH_TOKEN_SECONDARY".into(), "next-token".into());
        s.insert("TWILIO_ACCOUNT_SID".into(), format!("AC{}", "0".repeat(32)));
        s.insert("TWILIO_PHONE_NUMBER".into(), "+15550001111".into());
        s.insert("MONITOR_API_KEY".into(), "monitor-key".into());
        let printed = format!(
            "{:?} {:?}",
            Ingress::load(&s).unwrap(),
            Worker::load(&s).unwrap()
        );
        for secret in ["pa55word", "secret", "next-token", "monitor-key"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
    }

    #[test]
    fn a_worker_reads_sending_settings_only_for_queues_that_send() {
        // TWILIO_AUTH_TOKEN set (the ingress needs it) but no TWILIO_ACCOUNT_SID.
        let s = src(BASE);
        let inbound = Worker::load_for(&s, &[jobs::INBOUND, jobs::ROUTE]).unwrap();
        assert!(inbound.outbound.is_none());
        assert_eq!(
            Worker::load_for(&s, &[jobs::OUTBOUND_SEND])
                .unwrap_err()
                .setting,
            "TWILIO_ACCOUNT_SID"
        );
    }
}
