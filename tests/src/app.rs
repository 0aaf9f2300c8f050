//! The service under test, started in-process on real sockets: the ingress on 127.0.0.1:0 and,
//! on demand, workers for chosen queues. Tests talk to it over HTTP like Twilio and clients do.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use shared::config;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::pg::TestDb;

pub const AUTH_TOKEN: &str = "test-auth-token";
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
pub const OUR_NUMBER: &str = "+15550001000";

/// Settings for one test app, as environment-style key/values.
#[derive(Clone, Debug)]
pub struct Settings(pub HashMap<String, String>);

impl Settings {
    pub fn new(db: &TestDb) -> Self {
        let mut m = HashMap::new();
        for (k, v) in [
            ("DATABASE_URL", db.url.as_str()),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
            ("TWILIO_PHONE_NUMBER", OUR_NUMBER),
            ("DATABASE_MAX_CONNECTIONS", "10"),
            ("WORKER_HEARTBEAT_SECS", "2"),
            ("MONITOR_TIMEOUT_MS", "500"),
            ("MONITOR_BACKOFF_MS", "20"),
            ("LOG_FORMAT", "pretty"),
            // Quiet hours depend on the time of day a test runs: tests that exercise them opt in.
            ("QUIET_HOURS_WORKFLOWS", "none"),
            // The backfill reads Twilio's log; the tests that exercise it turn it on.
            ("INBOUND_BACKFILL_INTERVAL_SECS", "0"),
            // The simulator's agents listen on loopback, which the fence refuses by default.
            ("AGENT_ALLOWED_NETWORKS", "127.0.0.0/8,::1"),
        ] {
            m.insert(k.to_owned(), v.to_owned());
        }
        Self(m)
    }

    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// Back to the service's own default for `key`.
    pub fn unset(mut self, key: &str) -> Self {
        self.0.remove(key);
        self
    }
}

pub struct TestApp {
    pub base_url: String,
    /// The URL webhooks are signed against (PUBLIC_URL + path).
    pub public_url: String,
    pub pool: PgPool,
    pub settings: Settings,
    pub http: reqwest::Client,
    /// The operations listener (`/metrics`, detailed readiness), as `METRICS_ADDR` opens it.
    pub ops_url: String,
    shutdown: CancellationToken,
    workers: Vec<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl TestApp {
    /// Starts the ingress. PUBLIC_URL defaults to the listener's own address.
    pub async fn spawn(settings: Settings) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base_url = format!("http://{addr}");
        let settings = if settings.0.contains_key("PUBLIC_URL") {
            settings
        } else {
            settings.set("PUBLIC_URL", base_url.clone())
        };
        let cfg = config::Ingress::load(&settings.0).expect("test settings are valid");
        let public_url = cfg.public_url.clone();
        let pool = shared::db::lazy_pool(&cfg.common).unwrap();
        let state = ingress::AppState::new(cfg, pool.clone());
        let shutdown = CancellationToken::new();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_url = format!("http://{}", ops.local_addr().unwrap());
        tokio::spawn(ingress::server::serve_operations(
            ops,
            state.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(ingress::serve(listener, state, shutdown.clone()));
        Self {
            base_url,
            public_url,
            pool,
            settings,
            http: reqwest::Client::new(),
            ops_url,
            shutdown,
            workers: Vec::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// GETs `path` with an API key (or none): the status and the JSON body (Null when not JSON).
    pub async fn get_json(&self, path: &str, key: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.expect("request reaches the ingress");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GETs `path` without credentials and returns the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the ingress")
            .text()
            .await
            .expect("a text body")
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhook/twilio/sms", self.public_url)
    }

    /// Starts a worker process's queues in-process and returns its dependencies (for cache stats).
    pub async fn start_worker(&mut self, queues: &[&'static str]) -> Arc<worker::Deps> {
        let cfg = config::Worker::load(&self.settings.0).expect("worker settings are valid");
        let pool = shared::db::lazy_pool(&cfg.common).unwrap();
        let deps = worker::Deps::new(&cfg, pool);
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker::queues::run(
            deps.clone(),
            queues.to_vec(),
            worker::queues::QueueSettings::from(&cfg),
            token.clone(),
        ));
        self.workers.push((token, handle));
        deps
    }

    /// Stops all workers and waits for them to hand back or finish their jobs.
    pub async fn stop_workers(&mut self) {
        for (token, handle) in self.workers.drain(..) {
            token.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    /// Signs and posts an inbound webhook with these params.
    pub async fn post_webhook(&self, params: &[(String, String)]) -> reqwest::Response {
        sim::webhook::send_to(
            &self.http,
            &self.url("/webhook/twilio/sms"),
            &self.webhook_url(),
            AUTH_TOKEN,
            params,
        )
        .await
        .expect("request reaches the ingress")
    }

    /// Posts a new inbound SMS from `from` with `body`; returns its MessageSid.
    pub async fn inbound(&self, from: &str, body: &str) -> String {
        let sms = sim::webhook::InboundSms::new(from, OUR_NUMBER, body);
        let resp = self.post_webhook(&sms.params(ACCOUNT_SID)).await;
        assert_eq!(resp.status(), 200, "webhook accepted");
        sms.message_sid
    }

    /// Runs a `SELECT count(*) ...`.
    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Jobs of `queue` not yet finished.
    pub async fn pending_jobs(&self, queue: &str) -> i64 {
        shared::jobs::unfinished(&self.pool, queue).await.unwrap()
    }

    /// Waits until every job of `queue` is done (the running workers drain it).
    pub async fn drain(&self, queue: &str) {
        wait_until(Duration::from_secs(20), || async {
            self.pending_jobs(queue).await == 0
        })
        .await
        .unwrap_or_else(|_| panic!("queue {queue} did not drain"));
    }

    /// `GET /metrics` with a read key without a tenant (service-wide figures need one).
    pub async fn metrics_text(&self) -> String {
        let key = self.api_key(&["read"], None).await;
        let resp = self
            .http
            .get(self.url("/metrics"))
            .bearer_auth(key)
            .send()
            .await
            .expect("the ingress answers");
        assert_eq!(resp.status(), 200, "/metrics with an unscoped read key");
        resp.text().await.unwrap()
    }

    pub async fn api_key(&self, scopes: &[&str], tenant: Option<&str>) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        ingress::auth::create_key(&self.pool, "test", &scopes, tenant)
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for (token, _) in &self.workers {
            token.cancel();
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, cond: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_every(timeout, Duration::from_millis(25), cond).await
}

/// [`wait_until`] checking every `period`: for conditions that cost the database real work
/// (counts over large tables), so the check does not slow what it waits for.
pub async fn wait_until_every<F, Fut>(
    timeout: Duration,
    period: Duration,
    mut cond: F,
) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(period).await;
    }
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        shared::telemetry::init(config::LogFormat::Pretty);
    }
}

/// A built binary of the workspace (`sms-worker`, ...), brought up to date by `cargo build` on
/// its first use in this test process: `cargo test -p sms-tests` does not rebuild other
/// packages' binaries, and a stale one (say, without the newest migration) would test old code.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    // SMS_BIN_DIR runs the tests against other builds (e.g. target/release for measurements).
    if let Some(dir) = std::env::var_os("SMS_BIN_DIR") {
        let path = std::path::PathBuf::from(dir).join(name);
        assert!(
            path.exists(),
            "SMS_BIN_DIR has no {name}: {}",
            path.display()
        );
        return path;
    }
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    // Held while building, so that concurrent tests wait for one build.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec!["build", "--bin", name];
        if dir.ends_with("release") {
            args.push("--release");
        }
        let status = std::process::Command::new(cargo)
            .args(&args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_owned());
    }
    path
}

impl TestApp {
    /// Starts a real worker PROCESS with this app's settings (so tests can kill it).
    pub fn spawn_worker_process(
        &self,
        queues: &str,
        extra: &[(&str, &str)],
    ) -> std::process::Child {
        let mut cmd = std::process::Command::new(workspace_binary("sms-worker"));
        cmd.arg("--queues").arg(queues);
        cmd.env_clear();
        cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
        // Several workers run at once in tests: each takes any free port for its /metrics.
        cmd.env("WORKER_METRICS_ADDR", "127.0.0.1:0");
        for (k, v) in &self.settings.0 {
            cmd.env(k, v);
        }
        cmd.env("LOG_FORMAT", "json").env("RUST_LOG", "warn");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        // TEST_LOG shows the process's own log too (it is silent otherwise).
        let log = if std::env::var_os("TEST_LOG").is_some() {
            cmd.env("LOG_FORMAT", "pretty").env("RUST_LOG", "info");
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        };
        cmd.stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sms-worker")
    }
}
